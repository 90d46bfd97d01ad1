//! Project automation for meshtap: `cargo xtask <setup|build|run|test|lint>`.
//!
//! Runs on the default stable toolchain (through the `cargo xtask` alias); the nightly toolchain
//! is only used by aya-build inside `agent/build.rs` to compile `agent-ebpf`.
//!
//! | subcommand | setup it runs first | then |
//! | --- | --- | --- |
//! | `setup [--no-packages]` | all of it | - |
//! | `build [--release]` | Rust pieces only | `cargo build [--release] -p meshtap` |
//! | `run [--debug] [-- ARGS]` | Rust pieces only | build, then exec the agent as root |
//! | `test [--no-lint] [-- ARGS]` | all of it (needs root) | fmt + clippy, build, `cargo test` |
//! | `lint` | Rust pieces only | `cargo fmt --check`, `cargo clippy -D warnings` |
//!
//! "Rust pieces" are nightly's `rust-src`, stable's rustfmt + clippy and bpf-linker 0.10.3;
//! "all of it" adds the Debian packages, Python modules and npm packages the integration tests
//! use.

mod bench;
mod cmd;
mod setup;

use std::os::unix::process::CommandExt as _;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::{Parser, Subcommand};

use crate::cmd::{Ctx, euid, exists_on_path, run};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "meshtap build, run and test automation"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what the build and the tests need (idempotent, fast when nothing is missing)
    ///
    /// nightly rust-src, rustfmt + clippy, bpf-linker 0.10.3, Debian packages (apt), Debian
    /// 11's OpenSSL 1.1 (unpacked), Python modules (pip) and npm packages. Each step prints one
    /// line.
    Setup {
        /// Skip the Debian (apt), Python (pip) and npm packages; only the Rust pieces.
        #[arg(long)]
        no_packages: bool,
    },
    /// Set up the Rust pieces, then `cargo build [--release] -p meshtap`.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Set up the Rust pieces, build, then exec the agent as root
    ///
    /// The agent replaces this process (signals reach it directly); when not root it is run
    /// through `sudo -E`.
    Run {
        /// Build and run the debug profile (target/debug/meshtap) instead of release.
        #[arg(long)]
        debug: bool,
        /// Arguments for meshtap (after `--`).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Full setup, lint, release build, then the whole test suite (needs root)
    ///
    /// Runs `cargo fmt --all -- --check`, `cargo clippy --workspace --all-targets --release --
    /// -D warnings`, `cargo build --release -p meshtap`, then `cargo test --workspace --release
    /// [-- ARGS]` with MESHTAP_BIN=<abs path of target/release/meshtap>.
    Test {
        /// Skip `cargo fmt --check` and `cargo clippy -D warnings`.
        #[arg(long)]
        no_lint: bool,
        /// Arguments for the test binaries (after `--`), e.g. a filter or `--nocapture`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Set up the Rust pieces, then rustfmt check and clippy with warnings denied
    ///
    /// `cargo fmt --all -- --check`, then `cargo clippy --workspace --all-targets --release --
    /// -D warnings`.
    Lint,
    /// Measure the agent's overhead (A/B against no agent); see docs/benchmarks.md
    Bench(bench::Opts),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let name = match &cli.command {
        Cmd::Setup { .. } => "setup",
        Cmd::Build { .. } => "build",
        Cmd::Run { .. } => "run",
        Cmd::Test { .. } => "test",
        Cmd::Lint => "lint",
        Cmd::Bench(_) => "bench",
    };
    match Ctx::new().and_then(|ctx| dispatch(&ctx, cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask {name}: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(ctx: &Ctx, command: Cmd) -> Result<()> {
    match command {
        Cmd::Setup { no_packages } => setup::setup(ctx, !no_packages),
        Cmd::Build { release } => {
            setup::rust(ctx)?;
            build(ctx, release)?;
            eprintln!("xtask build: OK: {}", ctx.meshtap_bin(release).display());
            Ok(())
        }
        Cmd::Run { debug, args } => run_agent(ctx, !debug, &args),
        Cmd::Test { no_lint, args } => test(ctx, !no_lint, &args),
        Cmd::Lint => {
            setup::rust(ctx)?;
            lint(ctx)?;
            eprintln!("xtask lint: OK (rustfmt and clippy clean)");
            Ok(())
        }
        Cmd::Bench(opts) => bench::bench(ctx, opts),
    }
}

/// `cargo build [--release] -p meshtap`.
fn build(ctx: &Ctx, release: bool) -> Result<()> {
    let mut cmd = ctx.cargo(["build"]);
    if release {
        cmd.arg("--release");
    }
    run(cmd.args(["-p", "meshtap"]))
}

/// `cargo fmt --all -- --check`, then `cargo clippy --workspace --all-targets --release -- -D warnings`.
fn lint(ctx: &Ctx) -> Result<()> {
    run(&mut ctx.cargo(["fmt", "--all", "--", "--check"])).map_err(|e| {
        e.context("formatting check failed: run `cargo fmt --all` and commit the result")
    })?;
    run(&mut ctx.cargo([
        "clippy",
        "--workspace",
        "--all-targets",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))
    .map_err(|e| e.context("clippy reported warnings or errors (denied)"))
}

/// The cargo-fuzz targets (`fuzz/`, its own workspace) must keep compiling: built with plain
/// nightly cargo, which is what `cargo fuzz build` wraps (running the fuzzer is not a test).
fn fuzz_build(ctx: &Ctx) -> Result<()> {
    let mut cmd = ctx.cmd("rustup");
    cmd.args([
        "run",
        "nightly",
        "cargo",
        "build",
        "--manifest-path",
        "fuzz/Cargo.toml",
    ]);
    for var in [
        "CARGO",
        "RUSTC",
        "RUSTDOC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
    ] {
        cmd.env_remove(var);
    }
    run(&mut cmd).map_err(|e| e.context("the fuzz targets no longer build"))
}

fn run_agent(ctx: &Ctx, release: bool, args: &[String]) -> Result<()> {
    // Decide how to get root before spending minutes on a build.
    let sudo = euid() != 0;
    if sudo && !exists_on_path(ctx, "sudo") {
        bail!("meshtap needs root (eBPF) and sudo is not installed: re-run as root");
    }
    setup::rust(ctx)?;
    build(ctx, release)?;
    let bin = ctx.meshtap_bin(release);
    let mut cmd = if sudo {
        let mut cmd = ctx.cmd("sudo");
        cmd.arg("-E").arg(&bin);
        cmd
    } else {
        ctx.cmd(&bin)
    };
    cmd.args(args);
    eprintln!("$ {}", cmd::display(&cmd));
    // exec: the agent replaces this process, so SIGINT/SIGTERM reach it directly.
    let err = cmd.exec();
    bail!("could not exec `{}`: {err}", cmd::display(&cmd))
}

fn test(ctx: &Ctx, lint_first: bool, args: &[String]) -> Result<()> {
    if euid() != 0 {
        bail!(
            "the integration tests load eBPF programs and need root: run `cargo xtask test` as root"
        );
    }
    let start = Instant::now();
    let mut timings: Vec<String> = Vec::new();
    let mut stage = |what: &str, f: &mut dyn FnMut() -> Result<()>| -> Result<()> {
        let t = Instant::now();
        f().map_err(|e| e.context(format!("`cargo xtask test` failed at: {what}")))?;
        timings.push(format!("{what} {:.0}s", t.elapsed().as_secs_f64()));
        Ok(())
    };
    stage("setup", &mut || setup::setup(ctx, true))?;
    if lint_first {
        stage("lint", &mut || lint(ctx))?;
    }
    stage("build", &mut || build(ctx, true))?;
    stage("fuzz build", &mut || fuzz_build(ctx))?;
    let bin = ctx.meshtap_bin(true);
    stage("tests", &mut || {
        let mut cmd = ctx.cargo(["test", "--workspace", "--release"]);
        cmd.env("MESHTAP_BIN", &bin);
        if !args.is_empty() {
            cmd.arg("--").args(args);
        }
        run(&mut cmd)
    })?;
    eprintln!(
        "xtask test: OK in {:.0}s ({}{})",
        start.elapsed().as_secs_f64(),
        timings.join(", "),
        if lint_first { "" } else { "; lint skipped" }
    );
    Ok(())
}
