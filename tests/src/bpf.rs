//! What is loaded in the kernel: BPF programs and maps (via `bpftool`), and bpffs pins.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

/// `id -> name` of every object `bpftool -j <kind> list` reports (`kind`: prog, map, link).
pub fn ids(kind: &str) -> BTreeMap<u64, String> {
    let out = Command::new("bpftool")
        .args(["-j", kind, "list"])
        .output()
        .unwrap_or_else(|e| panic!("run bpftool: {e} (apt-get install bpftool)"));
    assert!(
        out.status.success(),
        "bpftool {kind} list: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: Value = serde_json::from_slice(&out.stdout).expect("bpftool JSON");
    list.as_array()
        .expect("bpftool list is an array")
        .iter()
        .map(|o| {
            let id = o["id"].as_u64().expect("bpftool object has an id");
            let name = o["name"].as_str().unwrap_or_default().to_owned();
            (id, name)
        })
        .collect()
}

/// Every path under `/sys/fs/bpf` (empty when bpffs is not mounted there).
pub fn pins() -> BTreeSet<PathBuf> {
    fn walk(dir: &Path, out: &mut BTreeSet<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            out.insert(path.clone());
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                walk(&path, out);
            }
        }
    }
    let mut out = BTreeSet::new();
    walk(Path::new("/sys/fs/bpf"), &mut out);
    out
}
