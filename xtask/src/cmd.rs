//! Running external commands: inherited stdio, every command echoed before it runs, and every
//! failure reported together with the exact command line that failed.

use std::ffi::{OsStr, OsString};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use anyhow::{Context as _, Result, bail};

/// Where the workspace is and how to run tools in it.
pub struct Ctx {
    /// Workspace root (the parent of `xtask/`).
    pub root: PathBuf,
    /// The cargo binary: `$CARGO` when set (it is under `cargo xtask`), else `cargo`.
    pub cargo: OsString,
    /// `$CARGO_HOME/bin` (default `~/.cargo/bin`): where rustup and `cargo install` put binaries.
    pub cargo_bin: PathBuf,
    /// `PATH` for every child process: `cargo_bin` first, so that `rustup`, `bpf-linker` (which
    /// `agent/build.rs` needs through aya-build) and freshly installed tools are found even when
    /// `~/.cargo/bin` is not on the caller's `PATH`.
    path: OsString,
}

impl Ctx {
    pub fn new() -> Result<Self> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .context("xtask's manifest directory has no parent")?
            .to_path_buf();
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let cargo_home = match std::env::var_os("CARGO_HOME") {
            Some(home) if !home.is_empty() => PathBuf::from(home),
            _ => std::env::home_dir()
                .context("neither CARGO_HOME nor HOME is set; cannot locate ~/.cargo/bin")?
                .join(".cargo"),
        };
        let cargo_bin = cargo_home.join("bin");
        let old_path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs = vec![cargo_bin.clone()];
        dirs.extend(std::env::split_paths(&old_path).filter(|dir| *dir != cargo_bin));
        let path = std::env::join_paths(dirs).context("cannot build PATH")?;
        Ok(Self {
            root,
            cargo,
            cargo_bin,
            path,
        })
    }

    /// A command run in the workspace root with the augmented `PATH` (also used to look up
    /// `program` itself).
    pub fn cmd(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.env("PATH", &self.path).current_dir(&self.root);
        cmd
    }

    /// `cargo <args>` with the cargo that runs xtask.
    pub fn cargo<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = self.cmd(&self.cargo);
        cmd.args(args);
        cmd
    }

    /// The cargo target directory (`$CARGO_TARGET_DIR`, relative to the root, else `target`).
    pub fn target_dir(&self) -> PathBuf {
        match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => self.root.join(dir),
            _ => self.root.join("target"),
        }
    }

    /// `target/<profile>/meshtap`.
    pub fn meshtap_bin(&self, release: bool) -> PathBuf {
        self.target_dir()
            .join(if release { "release" } else { "debug" })
            .join("meshtap")
    }
}

/// Echoes the command, runs it with inherited stdio and fails (naming it) unless it succeeds.
pub fn run(cmd: &mut Command) -> Result<()> {
    let shown = display(cmd);
    eprintln!("$ {shown}");
    let status = cmd
        .status()
        .with_context(|| format!("could not start `{shown}`"))?;
    if !status.success() {
        bail!("command failed ({status}): {shown}");
    }
    Ok(())
}

/// Runs a probe quietly (no echo, stdin closed, output captured). `Err` only if it cannot start.
pub fn probe(cmd: &mut Command) -> Result<Output> {
    cmd.stdin(Stdio::null())
        .output()
        .with_context(|| format!("could not start `{}`", display(cmd)))
}

/// Like [`probe`] but `None` when the program is missing or exits unsuccessfully, else its stdout.
pub fn probe_stdout(cmd: &mut Command) -> Option<String> {
    match probe(cmd) {
        Ok(out) if out.status.success() => Some(String::from_utf8_lossy(&out.stdout).into_owned()),
        _ => None,
    }
}

/// Whether `program` can be found on the augmented `PATH` (or is a path that exists).
pub fn exists_on_path(ctx: &Ctx, program: &str) -> bool {
    if program.contains('/') {
        return Path::new(program).exists();
    }
    std::env::split_paths(&ctx.path).any(|dir| dir.join(program).is_file())
}

/// Shell-like rendering of a command: explicitly set variables (except `PATH`), program, args.
pub fn display(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if key == "PATH" {
            continue;
        }
        if let Some(value) = value {
            parts.push(format!(
                "{}={}",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            ));
        }
    }
    parts.push(quote(&cmd.get_program().to_string_lossy()));
    parts.extend(cmd.get_args().map(|arg| quote(&arg.to_string_lossy())));
    parts.join(" ")
}

fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,@+%^".contains(c));
    if plain {
        s.to_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid(2) has no preconditions, cannot fail and touches no memory of ours.
    unsafe { libc::geteuid() }
}
