//! The documentation teaches bound values: no example builds SQL with `format!` (a
//! value formatted into SQL is an injection as soon as it comes from a user).

use std::path::{Path, PathBuf};

/// Files whose examples are not yet rewritten, with why.
const NOT_YET: &[&str] = &[];

/// The lines of `text` that are examples: doc comments of Rust sources, code blocks of
/// Markdown files.
fn example_lines(path: &Path, text: &str) -> Vec<(usize, String)> {
    let markdown = path.extension().is_some_and(|e| e == "md");
    let mut in_block = false;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let trimmed = line.trim_start();
        let example = if markdown {
            if trimmed.starts_with("```") {
                in_block = !in_block;
                false
            } else {
                in_block
            }
        } else {
            trimmed.starts_with("///") || trimmed.starts_with("//!")
        };
        if example {
            out.push((n + 1, line.to_owned()));
        }
    }
    out
}

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn no_example_formats_values_into_sql() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    sources(&root.join("src"), &mut files);
    files.push(root.join("README.md"));
    // The repository's README, where the crate is built inside it.
    files.extend(Some(root.join("../README.md")).filter(|p| p.exists()));
    let mut found = Vec::new();
    for path in files {
        let shown = path
            .strip_prefix(root)
            .unwrap_or(&path)
            .display()
            .to_string();
        if NOT_YET.contains(&shown.as_str()) {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for (n, line) in example_lines(&path, &text) {
            let sql = ["SELECT ", "INSERT ", "UPDATE ", "DELETE "]
                .iter()
                .any(|k| line.contains(k));
            if sql && line.contains("format!(") {
                found.push(format!("{shown}:{n}: {}", line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "examples that format values into SQL (bind them):\n{}",
        found.join("\n")
    );
}
