//! Compiles `agent-ebpf` for the BPF target (nightly, `-Z build-std=core`, bpf-linker) and leaves
//! the object in `OUT_DIR/meshtap-ebpf`, where `src/ebpf/loader.rs` embeds it.
use anyhow::Context as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR not set")?;
    let root_dir = std::path::Path::new(&manifest_dir).join("../agent-ebpf");
    let root_dir = root_dir.to_str().context("agent-ebpf path is not UTF-8")?;
    println!("cargo:rerun-if-changed=../agent-common/src");
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "meshtap-ebpf",
            root_dir,
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
