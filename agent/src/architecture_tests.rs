//! The layering of `docs/architecture.md`, checked against the code: every top-level module is
//! in the doc's layer table, and imports (`crate::x`) only reach lower layers. Test modules
//! (`#[cfg(test)]`) may compose anything and are not checked.

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// `module -> layer`, from the fenced block after the `layers` marker of the doc.
fn layers() -> BTreeMap<String, usize> {
    let doc = fs::read_to_string(root().join("../docs/architecture.md")).expect("read the doc");
    let marker = "<!-- layers: read by agent/src/architecture_tests.rs -->";
    let after = &doc[doc.find(marker).expect("layer marker in the doc")..];
    let block = after
        .split("```")
        .nth(1)
        .expect("a fenced block after the marker");
    let mut out = BTreeMap::new();
    for line in block.lines().skip(1).filter(|l| !l.trim().is_empty()) {
        let (layer, modules) = line.split_once(':').expect("`N: modules`");
        let layer: usize = layer.trim().parse().expect("a layer number");
        for m in modules.split_whitespace() {
            assert!(
                out.insert(m.to_string(), layer).is_none(),
                "{m} twice in the table"
            );
        }
    }
    out
}

/// The source of a file without its test modules (everything from a `#[cfg(test)]` module on).
fn product_code(text: &str) -> &str {
    let mut end = text.len();
    let mut from = 0;
    while let Some(i) = text[from..].find("#[cfg(test)]") {
        let at = from + i;
        let rest = text[at + "#[cfg(test)]".len()..].trim_start();
        let rest = if rest.starts_with("#[path") {
            rest.split_once('\n').map_or("", |(_, r)| r).trim_start()
        } else {
            rest
        };
        if rest.starts_with("mod ") {
            end = at;
            break;
        }
        from = at + 1;
    }
    &text[..end]
}

/// The top-level modules a file names through `crate::`, including those in `use crate::{a,
/// b::c}` groups.
fn imports(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("crate::") {
        rest = &rest[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level names of the group: the first path segment of each item at depth 0.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        out.push(first_segment(&item));
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
            out.push(first_segment(&item));
        } else {
            out.push(first_segment(rest));
        }
    }
    out.retain(|m| !m.is_empty());
    out
}

fn first_segment(s: &str) -> String {
    s.trim()
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).expect("read src") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_import_only_lower_layers() {
    let layers = layers();
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut problems = Vec::new();
    for file in files {
        let rel = file.strip_prefix(&src).expect("under src");
        let name = rel.to_string_lossy();
        // Whole files of tests.
        if name.ends_with("_tests.rs") || name.ends_with("/tests.rs") {
            continue;
        }
        let module = rel
            .components()
            .next()
            .map(|c| {
                c.as_os_str()
                    .to_string_lossy()
                    .trim_end_matches(".rs")
                    .to_string()
            })
            .expect("a first component");
        let Some(&mine) = layers.get(&module) else {
            problems.push(format!(
                "{name}: module `{module}` is not in the layer table of docs/architecture.md"
            ));
            continue;
        };
        let text = fs::read_to_string(&file).expect("read a source file");
        for import in imports(product_code(&text)) {
            if import == module {
                continue;
            }
            match layers.get(&import) {
                Some(&theirs) if theirs < mine => {}
                Some(&theirs) => problems.push(format!(
                    "{name}: `{module}` (layer {mine}) imports `{import}` (layer {theirs})"
                )),
                None => problems.push(format!(
                    "{name}: imports `{import}`, which is not in the layer table"
                )),
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_checker_sees_groups_paths_and_test_modules() {
    let text = "use crate::{a::b, c::{d, e}, f};\nfn x() { crate::g::h(); }\n\
                #[cfg(test)]\nmod tests { use crate::z; }";
    assert_eq!(imports(product_code(text)), ["a", "c", "f", "g"]);
}
