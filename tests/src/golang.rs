//! Go programs the tests build: [`https_go()`], the HTTPS server and client on Go's own
//! `crypto/tls` (`tests/scripts/https_go.go`), built once per test binary with Debian's
//! `golang-go` (`cargo xtask setup` installs it).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::process::{run_command, scripts_dir};
use crate::workspace_root;

/// How long `go build` may take (a cold build cache compiles net/http and crypto/tls).
const BUILD: Duration = Duration::from_secs(300);

/// The cargo target directory of this test binary (`<target>/<profile>/deps/<test>`), else
/// `<workspace>/target`.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| {
            let deps = exe.parent()?;
            (deps.file_name()? == "deps").then(|| deps.parent()?.parent().map(Path::to_path_buf))?
        })
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// `tests/scripts/https_go.go` built into `<target>/go/https_go`, once per test binary (the
/// tests of one binary share it). A static executable (`CGO_ENABLED=0`: pure Go, no libc, no
/// OpenSSL) that keeps its symbol table (no `-ldflags=-s`): the agent finds
/// `crypto/tls.(*Conn).Read` and `Write` there, and labels the file by its name, `https_go`.
/// Its build cache and GOPATH live under `<target>/go` too; GOPATH mode (`GO111MODULE=off`),
/// standard library only, nothing downloaded (`GOTOOLCHAIN=local`; any `GOFLAGS` unset).
pub fn https_go() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let go = std::env::var_os("PATH")
            .and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join("go"))
                    .find(|p| p.is_file())
            })
            .unwrap_or_else(|| {
                panic!("`go` not found on PATH: `cargo xtask setup` installs golang-go")
            });
        build(&go, None, "https_go.go", "go", "https_go")
    })
}

/// Go 1.23 from Debian 12's backports, unpacked there by `cargo xtask setup`.
pub const GO_1_23_ROOT: &str = "/usr/local/lib/meshtap/go-1.23/usr/lib/go-1.23";

/// [`https_go()`] built with Go 1.23 ([`GO_1_23_ROOT`]) into `<target>/go-1.23/https_go`: the
/// same file name (the `library` label), the Go of today's binaries (`go:itab.` symbols, newer
/// `crypto/tls` code).
pub fn https_go_1_23() -> &'static Path {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT.get_or_init(|| {
        let root = Path::new(GO_1_23_ROOT);
        let go = root.join("bin/go");
        assert!(
            go.is_file(),
            "{} missing: `cargo xtask setup` unpacks Go 1.23 there",
            go.display()
        );
        build(&go, Some(root), "https_go.go", "go-1.23", "https_go")
    })
}

fn build(go: &Path, goroot: Option<&Path>, source: &str, subdir: &str, name: &str) -> PathBuf {
    let dir = target_dir().join(subdir);
    let exe = dir.join(name);
    let mut cmd = Command::new(go);
    if let Some(root) = goroot {
        cmd.env("GOROOT", root);
    } else {
        cmd.env_remove("GOROOT");
    }
    cmd.args(["build", "-trimpath", "-o"])
        .arg(&exe)
        .arg(scripts_dir().join(source))
        .current_dir(workspace_root())
        .env("GOCACHE", dir.join("cache"))
        .env("GOPATH", dir.join("path"))
        .env("GO111MODULE", "off")
        .env("GOTOOLCHAIN", "local")
        .env("CGO_ENABLED", "0")
        .env_remove("GOFLAGS");
    let out = run_command(&mut cmd, BUILD);
    assert!(
        out.status.success(),
        "go build {source} failed ({}): {}{}",
        out.status,
        out.stdout,
        out.stderr
    );
    exe
}
