//! The project's documents link to each other: every relative link in the
//! README, CONTRIBUTING.md and docs/*.md must name a file that exists and,
//! with a `#anchor`, a heading of that file (GitHub's anchor rules).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The documents whose links are checked, relative to the workspace root.
fn documents(root: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = ["README.md", "CONTRIBUTING.md", "schemas/README.md", "scripts/kafka/README.md"]
        .iter()
        .map(|name| root.join(name))
        .collect();
    let docs = fs::read_dir(root.join("docs")).expect("docs/ exists");
    let mut pages: Vec<PathBuf> = docs
        .map(|entry| entry.expect("a docs/ entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "md"))
        .collect();
    pages.sort();
    files.extend(pages);
    files
}

/// The lines of `text` outside fenced code blocks, with their numbers.
fn prose_lines(text: &str) -> Vec<(usize, &str)> {
    let mut in_fence = false;
    let mut lines = Vec::new();
    for (index, line) in text.lines().enumerate() {
        if line.trim_start().starts_with("```") {
            in_fence = !in_fence;
            continue;
        }
        if !in_fence {
            lines.push((index + 1, line));
        }
    }
    lines
}

/// `line` without its inline code spans.
fn without_code_spans(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut in_code = false;
    for ch in line.chars() {
        if ch == '`' {
            in_code = !in_code;
        } else if !in_code {
            out.push(ch);
        }
    }
    out
}

/// The targets of the inline links (`[text](target)`, images included) and
/// reference definitions (`[name]: target`) of `text`, with line numbers.
fn link_targets(text: &str) -> Vec<(usize, String)> {
    let mut targets = Vec::new();
    for (number, line) in prose_lines(text) {
        let line = without_code_spans(line);
        let trimmed = line.trim_start();
        if trimmed.starts_with('[')
            && let Some(end) = trimmed.find("]: ")
        {
            let target = trimmed[end + 3..].split_whitespace().next().unwrap_or("");
            targets.push((number, target.trim_matches(['<', '>']).to_owned()));
            continue;
        }
        let mut rest = line.as_str();
        while let Some(at) = rest.find("](") {
            let after = &rest[at + 2..];
            let Some(close) = after.find(')') else { break };
            let target = after[..close].split_whitespace().next().unwrap_or("");
            targets.push((number, target.trim_matches(['<', '>']).to_owned()));
            rest = &after[close + 1..];
        }
    }
    targets
}

/// The anchor GitHub gives a heading: lower case, punctuation dropped
/// (letters, digits, `-` and `_` kept), spaces made hyphens.
fn slug(heading: &str) -> String {
    // A link in a heading contributes its text only.
    let mut text = String::new();
    let mut rest = heading;
    while let Some(open) = rest.find('[') {
        text.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match (after.find("]("), after.find(')')) {
            (Some(mid), Some(close)) if mid < close => {
                text.push_str(&after[..mid]);
                rest = &after[close + 1..];
            }
            _ => {
                text.push('[');
                rest = after;
            }
        }
    }
    text.push_str(rest);
    text.trim()
        .to_lowercase()
        .chars()
        .filter_map(|ch| match ch {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

/// The anchors of every heading of `text`, a repeated one numbered as GitHub
/// numbers it (`name`, `name-1`, ...).
fn anchors(text: &str) -> HashSet<String> {
    let mut anchors = HashSet::new();
    for (_, line) in prose_lines(text) {
        let hashes = line.chars().take_while(|&c| c == '#').count();
        if !(1..=6).contains(&hashes) || !line[hashes..].starts_with(' ') {
            continue;
        }
        let base = slug(line[hashes..].trim_end_matches('#'));
        let mut anchor = base.clone();
        let mut n = 0;
        while anchors.contains(&anchor) {
            n += 1;
            anchor = format!("{base}-{n}");
        }
        anchors.insert(anchor);
    }
    anchors
}

/// Every broken relative link of `file`, described for a failure message.
fn broken_links(root: &Path, file: &Path) -> Vec<String> {
    let text = fs::read_to_string(file).unwrap_or_else(|err| panic!("{}: {err}", file.display()));
    let shown = file.strip_prefix(root).unwrap_or(file).display().to_string();
    let mut broken = Vec::new();
    for (line, target) in link_targets(&text) {
        if target.is_empty() {
            broken.push(format!("{shown}:{line}: an empty link"));
            continue;
        }
        if target.contains("://") || target.starts_with("mailto:") {
            continue;
        }
        let (path, anchor) = match target.split_once('#') {
            Some((path, anchor)) => (path, Some(anchor)),
            None => (target.as_str(), None),
        };
        let linked = if path.is_empty() { file.to_path_buf() } else { file.parent().expect("a parent").join(path) };
        if !linked.exists() {
            broken.push(format!("{shown}:{line}: {target}: {} does not exist", linked.display()));
            continue;
        }
        let Some(anchor) = anchor else { continue };
        let is_markdown = linked.extension().is_some_and(|ext| ext == "md");
        let headings =
            if is_markdown { anchors(&fs::read_to_string(&linked).expect("readable")) } else { HashSet::new() };
        if !headings.contains(anchor) {
            broken.push(format!("{shown}:{line}: {target}: no heading with the anchor #{anchor}"));
        }
    }
    broken
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ sits in the workspace").to_path_buf()
}

#[test]
fn every_relative_link_of_the_docs_names_an_existing_file_and_heading() {
    let root = workspace_root();
    let files = documents(&root);
    assert!(files.iter().any(|f| f.ends_with("docs/operations.md")), "{files:?}");
    let mut checked = 0;
    let mut broken = Vec::new();
    for file in &files {
        checked += link_targets(&fs::read_to_string(file).expect("readable")).len();
        broken.extend(broken_links(&root, file));
    }
    assert!(checked > 20, "only {checked} links found: is the link parser broken?");
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn the_link_check_reports_a_missing_file_a_missing_anchor_and_nothing_else() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let root = dir.path();
    fs::create_dir(root.join("docs")).unwrap();
    fs::write(root.join("docs/other.md"), "# Other page\n\n## Why `beyond-schema/` exists\n\n## Twice\n\n## Twice\n")
        .unwrap();
    let readme = "\
# Title

See [other](docs/other.md), [its section](docs/other.md#why-beyond-schema-exists),
[the second](docs/other.md#twice-1) and [here](#title), or <https://example.com> and
[the web](https://example.com/missing.md).

```sh
echo [not a link](nowhere.md)
```

Not a link either: `[code](nowhere.md)`.

[gone](docs/gone.md) and [no such heading](docs/other.md#twice-2)

[ref]: docs/also-gone.md
";
    fs::write(root.join("README.md"), readme).unwrap();
    let broken = broken_links(root, &root.join("README.md"));
    assert_eq!(broken.len(), 3, "{broken:#?}");
    assert!(broken[0].starts_with("README.md:13: docs/gone.md:"), "{broken:#?}");
    assert!(broken[1].contains("docs/other.md#twice-2: no heading"), "{broken:#?}");
    assert!(broken[2].starts_with("README.md:15: docs/also-gone.md:"), "{broken:#?}");
}

#[test]
fn slugs_follow_githubs_rules() {
    assert_eq!(slug("Readiness, status, metrics"), "readiness-status-metrics");
    assert_eq!(slug("Why `beyond-schema/` exists"), "why-beyond-schema-exists");
    assert_eq!(slug("The [API](api.md) in short"), "the-api-in-short");
    assert_eq!(slug("snake_case and Ünïcode"), "snake_case-and-ünïcode");
}
