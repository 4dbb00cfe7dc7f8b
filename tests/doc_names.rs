//! The names a newcomer looks up: every `` `Type::member` `` that README.md, ARCHITECTURE.md,
//! docs/FORMAT.md and the crate's front page (`src/lib.rs`) write in code spans, where `Type`
//! is a type of this workspace, must be a member of that type (a method, associated constant
//! or type, field or variant, declared in its item or one of its `impl` blocks). A rename
//! that leaves the old name in the prose fails here, naming the file, the line and the name.
//!
//! Intra-doc links in rustdoc are checked by `cargo doc` already; these documents are plain
//! Markdown, which nothing else checks. Names of other crates' types that share a name with
//! one of ours (redb's `Durability`) are listed in `OTHER_CRATES`.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

/// `Type::member` spans that name another crate's type, with whose it is.
const OTHER_CRATES: &[(&str, &str)] = &[
    ("Durability::Immediate", "redb's"),
    ("Durability::None", "redb's"),
];

/// The documents checked, from the workspace root.
const DOCS: &[&str] = &[
    "README.md",
    "ARCHITECTURE.md",
    "docs/FORMAT.md",
    "src/lib.rs",
];

/// The source trees whose types the documents name.
const SOURCES: &[&str] = &["src", "tools/src", "mergelog-raft/src", "examples"];

#[test]
fn every_type_member_the_docs_name_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let members = workspace_members(root);
    assert!(
        members
            .get("Engine")
            .is_some_and(|m| m.contains("retire_before")),
        "the scan finds Engine::retire_before (else it finds nothing and checks nothing)"
    );
    let mut stale = Vec::new();
    let mut checked = 0;
    for doc in DOCS {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        for (line, ty, member) in named_members(doc, &text) {
            let Some(of_type) = members.get(ty.as_str()) else {
                continue; // not a type of this workspace (std's, openraft's, ...)
            };
            let name = format!("{ty}::{member}");
            if OTHER_CRATES.iter().any(|(n, _)| *n == name) {
                continue;
            }
            checked += 1;
            if !of_type.contains(member.as_str()) {
                stale.push(format!("{doc}:{line}: `{name}`"));
            }
        }
    }
    assert!(checked > 100, "only {checked} names checked");
    assert!(
        stale.is_empty(),
        "the docs name members their types do not have (renamed or removed?):\n{}",
        stale.join("\n")
    );
}

/// Every relative link of the documents a newcomer reads (`[text](path)`,
/// `[text](path#anchor)`, `[text](#anchor)`) leads to a file of the repository and, for a
/// Markdown file, to one of its headings (GitHub's anchors: lower case, punctuation but `-`
/// and `_` dropped, spaces as `-`, a repeated heading's anchor suffixed `-1`, `-2`, ...); and
/// every repository path in a code span (`src/log/fds.rs`, `examples/kv_wal/`) exists.
#[test]
fn every_link_and_path_the_docs_give_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in ["README.md", "ARCHITECTURE.md", "docs/FORMAT.md"] {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        let base = root.join(doc).parent().unwrap().to_owned();
        for (i, line) in text.lines().enumerate() {
            let mut rest = line;
            while let Some(p) = rest.find("](") {
                rest = &rest[p + 2..];
                let Some(end) = rest.find(')') else { break };
                let link = &rest[..end];
                if link.contains("://") || link.starts_with("mailto:") {
                    continue;
                }
                checked += 1;
                let (path, anchor) = link.split_once('#').unwrap_or((link, ""));
                let target = if path.is_empty() {
                    root.join(doc)
                } else {
                    base.join(path)
                };
                if !target.exists() {
                    broken.push(format!(
                        "{doc}:{}: link {link}: no file {}",
                        i + 1,
                        target.display()
                    ));
                } else if !anchor.is_empty()
                    && target.extension().is_some_and(|e| e == "md")
                    && !anchors(&std::fs::read_to_string(&target).unwrap()).contains(anchor)
                {
                    broken.push(format!("{doc}:{}: link {link}: no such heading", i + 1));
                }
            }
            for span in line.split('`').skip(1).step_by(2) {
                let top = [
                    "src/",
                    "tests/",
                    "tools/",
                    "examples/",
                    "docs/",
                    "benches/",
                    "fuzz/",
                    "mergelog-raft/",
                ];
                if !top.iter().any(|t| span.starts_with(t))
                    || span.contains(|c: char| c.is_whitespace() || c == '*' || c == '<')
                {
                    continue;
                }
                checked += 1;
                if !root.join(span.trim_end_matches('.')).exists() {
                    broken.push(format!("{doc}:{}: no path {span}", i + 1));
                }
            }
        }
    }
    assert!(checked > 20, "only {checked} links and paths checked");
    assert!(
        broken.is_empty(),
        "broken links and paths:\n{}",
        broken.join("\n")
    );
}

/// The anchors GitHub gives the headings of a Markdown text.
fn anchors(markdown: &str) -> HashSet<String> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = HashSet::new();
    let mut fenced = false;
    for line in markdown.lines() {
        if line.starts_with("```") {
            fenced = !fenced;
        }
        let heading = line.trim_start_matches('#');
        if fenced || heading.len() == line.len() || !heading.starts_with(' ') {
            continue;
        }
        let slug: String = heading
            .trim()
            .to_lowercase()
            .chars()
            .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
            .map(|c| if c == ' ' { '-' } else { c })
            .collect();
        let n = seen.entry(slug.clone()).or_insert(0);
        out.insert(if *n == 0 { slug } else { format!("{slug}-{n}") });
        *n += 1;
    }
    out
}

/// Every `Type::member` inside a code span of `text`, with its line. In `src/lib.rs` only
/// the `//!` lines (the crate's front page) are read.
fn named_members(doc: &str, text: &str) -> Vec<(usize, String, String)> {
    let mut found = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = if doc.ends_with(".rs") {
            match line.trim_start().strip_prefix("//!") {
                Some(l) => l,
                None => continue,
            }
        } else {
            line
        };
        // The odd pieces between backticks are code spans.
        for span in line.split('`').skip(1).step_by(2) {
            let bytes = span.as_bytes();
            let mut at = 0;
            while let Some(off) = span[at..].find("::") {
                let sep = at + off;
                at = sep + 2;
                let start = span[..sep]
                    .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .map_or(0, |p| p + 1);
                let ty = &span[start..sep];
                // A path's first segment only when it is a type (`Engine::put`, not
                // `std::fs` nor the `Engine` of `mergelog::Engine::put`'s module part).
                let after_path = start >= 2 && &span[start - 2..start] == "::";
                if ty.is_empty() || !bytes[start].is_ascii_uppercase() || after_path {
                    continue;
                }
                let end = span[at..]
                    .find(|c: char| !(c.is_alphanumeric() || c == '_'))
                    .map_or(span.len(), |p| at + p);
                if end > at {
                    found.push((i + 1, ty.to_string(), span[at..end].to_string()));
                }
            }
        }
    }
    found
}

/// Each type of the workspace's sources, with the names declared in its item (fields,
/// variants) and in its `impl` blocks (functions, constants, types). Types of one name in
/// several modules share one set.
fn workspace_members(root: &Path) -> HashMap<String, HashSet<String>> {
    let mut files = Vec::new();
    for dir in SOURCES {
        rust_files(&root.join(dir), &mut files);
    }
    let mut members: HashMap<String, HashSet<String>> = HashMap::new();
    for file in files {
        let code = code_only(&std::fs::read_to_string(&file).unwrap());
        let code_words = words(&code);
        for (i, &(word, pos)) in code_words.iter().enumerate() {
            let (ty, is_item) = match word {
                "struct" | "enum" | "union" | "trait" => match code_words.get(i + 1) {
                    Some(&(name, _)) => (name, true),
                    None => continue,
                },
                "impl" => match impl_type(&code[pos + 4..]) {
                    Some(name) => (name, false),
                    None => continue,
                },
                _ => continue,
            };
            // The body: from the first `{` before any `;` (a unit or tuple struct has none).
            let rest = &code[pos..];
            let Some(open) = rest
                .find(['{', ';'])
                .filter(|&p| rest.as_bytes()[p] == b'{')
            else {
                members.entry(ty.to_string()).or_default();
                continue;
            };
            let body = braced(&rest[open..]);
            let set = members.entry(ty.to_string()).or_default();
            let body_words = words(body);
            for w in body_words.windows(2) {
                if matches!(w[0].0, "fn" | "const" | "type") {
                    set.insert(w[1].0.to_string());
                }
            }
            if is_item {
                // Fields and variants: the names at the body's own depth.
                let mut depth = 0;
                let mut last = 0;
                for (p, c) in body.char_indices() {
                    let step = match c {
                        '{' | '(' | '[' | '<' => 1,
                        '>' if body[..p].ends_with('-') => continue, // `->`
                        '}' | ')' | ']' | '>' => -1,
                        _ => continue,
                    };
                    if depth == 1 {
                        for (w, _) in words(&body[last..p]) {
                            set.insert(w.to_string());
                        }
                    }
                    depth += step;
                    last = p + 1;
                }
            }
        }
    }
    members
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The type an `impl` header names: the one after `for` if it has one, else the first path
/// after the generics; its last segment.
fn impl_type(header: &str) -> Option<&str> {
    let header = &header[..header.find(['{', ';'])?];
    let header = header.trim_start();
    // Skip `impl`'s own generics.
    let mut rest = header;
    if rest.starts_with('<') {
        let mut depth = 0;
        for (p, c) in rest.char_indices() {
            match c {
                '<' => depth += 1,
                '>' => depth -= 1,
                _ => {}
            }
            if depth == 0 {
                rest = &rest[p + 1..];
                break;
            }
        }
    }
    if let Some(p) = rest.find(" for ") {
        rest = &rest[p + 5..];
    }
    let path = rest
        .trim_start()
        .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .next()?;
    let name = path.rsplit("::").next()?;
    name.starts_with(|c: char| c.is_ascii_uppercase())
        .then_some(name)
}

/// `text` from its first character, an opening brace, to its matching closing one.
fn braced(text: &str) -> &str {
    let mut depth = 0;
    for (p, c) in text.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return &text[..=p];
                }
            }
            _ => {}
        }
    }
    text
}

/// Identifiers with their byte offsets.
fn words(text: &str) -> Vec<(&str, usize)> {
    let mut out = Vec::new();
    let mut start = None;
    for (p, c) in text.char_indices().chain([(text.len(), ' ')]) {
        let in_word = c.is_alphanumeric() || c == '_';
        match (start, in_word) {
            (None, true) => start = Some(p),
            (Some(s), false) => {
                if !text[s..].starts_with(|c: char| c.is_ascii_digit()) {
                    out.push((&text[s..p], s));
                }
                start = None;
            }
            _ => {}
        }
    }
    out
}

/// `source` with its comments, string literals and character literals blanked (same
/// length), so that braces and words in them count for nothing.
fn code_only(source: &str) -> String {
    let b = source.as_bytes();
    let mut out = b.to_vec();
    let blank = |out: &mut Vec<u8>, from: usize, to: usize| {
        for c in &mut out[from..to] {
            if *c != b'\n' {
                *c = b' ';
            }
        }
    };
    let mut i = 0;
    while i < b.len() {
        let ident_before = i > 0 && (b[i - 1].is_ascii_alphanumeric() || b[i - 1] == b'_');
        if b[i..].starts_with(b"//") {
            let end = source[i..].find('\n').map_or(b.len(), |p| i + p);
            blank(&mut out, i, end);
            i = end;
        } else if b[i..].starts_with(b"/*") {
            let end = source[i + 2..]
                .find("*/")
                .map_or(b.len(), |p| i + 2 + p + 2);
            blank(&mut out, i, end);
            i = end;
        } else if !ident_before
            && (b[i..].starts_with(b"r\"")
                || b[i..].starts_with(b"r#")
                || b[i..].starts_with(b"br\"")
                || b[i..].starts_with(b"br#"))
        {
            // A raw string: r, then hashes, a quote, ..., a quote and as many hashes.
            let r = i + if b[i] == b'b' { 2 } else { 1 };
            let hashes = b[r..].iter().take_while(|&&c| c == b'#').count();
            if b.get(r + hashes) != Some(&b'"') {
                i += 1;
                continue;
            }
            let close = format!("\"{}", "#".repeat(hashes));
            let end = source[r + hashes + 1..]
                .find(&close)
                .map_or(b.len(), |p| r + hashes + 1 + p + close.len());
            blank(&mut out, i, end);
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            blank(&mut out, i, (j + 1).min(b.len()));
            i = j + 1;
        } else if b[i] == b'\'' {
            // A character literal ('x', '\n', '\u{..}', '\''), not a lifetime ('a).
            let len = if b.get(i + 1) == Some(&b'\\') {
                source[i + 3..].find('\'').map(|p| p + 4)
            } else {
                let c = source[i + 1..].chars().next();
                c.and_then(|c| {
                    (b.get(i + 1 + c.len_utf8()) == Some(&b'\'')).then(|| c.len_utf8() + 2)
                })
            };
            match len {
                Some(len) => {
                    blank(&mut out, i, i + len);
                    i += len;
                }
                None => i += 1,
            }
        } else {
            i += 1;
        }
    }
    String::from_utf8(out)
        .expect("blanking keeps UTF-8 (multi-byte characters lie in comments or strings)")
}
